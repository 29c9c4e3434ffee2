"""Who of the provider's users may sign in here: the admission policy, applied to the validated
claims of every sign-in *before* any local account is created or used, and again at each refresh
when `upstream_check=refresh` brings fresh claims.

* `upstream_allowed_domains`: the user's email is in one of these domains. Only a verified email
  counts (`email_verified` true): an unverified address is whatever the user typed.
* `upstream_allowed_users`: the value of the identity claim (`sub` by default), exactly, or the
  verified email, compared without case.
* Either of the two admits (when both are set); `upstream_required_claim` (`name=value`) must
  hold as well: the claim equals the value, or is a list containing it (groups, roles).
* With none of them, everyone the provider signs in is admitted (start-up warns about it).
"""

from __future__ import annotations

from auth.upstream.settings import AdmissionPolicy


def verified_email(claims: dict[str, object]) -> str | None:
    email, verified = claims.get("email"), claims.get("email_verified")
    if isinstance(email, str) and "@" in email and verified in (True, "true"):
        return email.lower()
    return None


def refusal(policy: AdmissionPolicy, identity: str, claims: dict[str, object]) -> str | None:
    """None when the policy admits this user, else why not (for the log and the error page)."""
    if policy.domains or policy.users:
        email = verified_email(claims)
        domain = email.rpartition("@")[2] if email else None
        in_domain = domain is not None and domain in {d.lower() for d in policy.domains}
        listed = identity in policy.users or (email is not None and email in {u.lower() for u in policy.users})
        if not (in_domain or listed):
            if policy.domains and email is None and not policy.users:
                return "the provider did not give a verified email address, which upstream_allowed_domains needs"
            return "this account is not among the users allowed to sign in here"
    if policy.required_claim is not None:
        name, value = policy.required_claim
        found = claims.get(name)
        if not (found == value or (isinstance(found, list) and value in found)):
            return f"this account lacks {name}={value}, which this server requires"
    return None
