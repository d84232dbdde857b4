"""The claims Cairn reads: `groups` (a scope of its own) and the user's names."""

from django.utils.translation import gettext_lazy as _
from oidc_provider.lib.claims import ScopeClaims


def userinfo(claims, user):
    """OIDC_USERINFO: standard claims from Django's user model."""
    claims["preferred_username"] = user.get_username()
    claims["name"] = user.get_full_name() or user.get_username()
    claims["given_name"] = user.first_name
    claims["family_name"] = user.last_name
    claims["email"] = user.email
    claims["email_verified"] = bool(user.email)
    return claims


class CairnScopeClaims(ScopeClaims):
    """OIDC_EXTRA_SCOPE_CLAIMS: the `groups` scope adds `groups`, the names of the
    user's Django groups (sorted; an empty list for a user in none)."""

    info_groups = (
        _("Groups"),
        _("The names of the groups you belong to."),
    )

    def scope_groups(self):
        return {"groups": sorted(self.user.groups.values_list("name", flat=True))}
