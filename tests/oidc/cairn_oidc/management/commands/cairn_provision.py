"""`manage.py cairn_provision --spec spec.json`: the provider's keys, users and clients.

The spec (JSON):

    {
      "users": [
        {"username": "alice", "password": "pw", "email": "alice@example.test",
         "groups": ["physics", "staff"]}
      ],
      "clients": [
        {"client_id": "cairn", "client_secret": "s3cret",
         "redirect_uris": ["http://127.0.0.1:8443/auth/callback"]}
      ]
    }

Idempotent: run it again with the same spec and nothing changes; with another one,
the named users and clients are brought to what it says (a user's groups become
exactly the listed ones; groups are created as needed). An RS256 signing key is
created if the provider has none.

Every client is confidential (client_secret_basic or client_secret_post at the token
endpoint), answers response type `code`, signs ID tokens with RS256, never asks for
consent, and is allowed the scopes openid, email, profile and groups.
"""

import json

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from oidc_provider.models import Client, ResponseType, RSAKey

CLIENT_SCOPES = ["openid", "email", "profile", "groups"]


def _require(obj, key, kind, where):
    value = obj.get(key)
    if value is None:
        raise CommandError(f"{where}: missing {key!r}")
    if not isinstance(value, kind):
        raise CommandError(f"{where}: {key!r} must be a {kind.__name__}")
    return value


class Command(BaseCommand):
    help = "Create or update the provider's signing key, users and clients from a JSON spec."

    def add_arguments(self, parser):
        parser.add_argument("--spec", required=True, help="path of the JSON spec")

    def handle(self, *args, **options):
        try:
            with open(options["spec"], encoding="utf-8") as f:
                spec = json.load(f)
        except (OSError, ValueError) as e:
            raise CommandError(f"cannot read the spec {options['spec']}: {e}")
        if not isinstance(spec, dict):
            raise CommandError("the spec must be a JSON object")

        if not RSAKey.objects.exists():
            call_command("creatersakey", stdout=self.stdout)
            # creatersakey reports its own failures on stdout and returns normally.
            if not RSAKey.objects.exists():
                raise CommandError("creatersakey made no RSA key")

        with transaction.atomic():
            for i, user in enumerate(spec.get("users", [])):
                self._user(user, f"users[{i}]")
            for i, client in enumerate(spec.get("clients", [])):
                self._client(client, f"clients[{i}]")

    def _user(self, spec, where):
        username = _require(spec, "username", str, where)
        password = _require(spec, "password", str, where)
        email = spec.get("email", "")
        groups = spec.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise CommandError(f"{where}: 'groups' must be a list of names")

        User = get_user_model()
        user, created = User.objects.get_or_create(username=username)
        user.email = email
        user.first_name = spec.get("first_name", "")
        user.last_name = spec.get("last_name", "")
        user.is_active = True
        if created or not user.check_password(password):
            user.set_password(password)
        user.save()
        user.groups.set([Group.objects.get_or_create(name=name)[0] for name in groups])
        self.stdout.write(
            f"user {username} ({'created' if created else 'updated'}), groups {sorted(groups)}"
        )

    def _client(self, spec, where):
        client_id = _require(spec, "client_id", str, where)
        client_secret = _require(spec, "client_secret", str, where)
        redirect_uris = _require(spec, "redirect_uris", list, where)
        if not redirect_uris or not all(isinstance(u, str) for u in redirect_uris):
            raise CommandError(f"{where}: 'redirect_uris' must be a non-empty list of URLs")

        client, created = Client.objects.get_or_create(client_id=client_id)
        client.name = spec.get("name", client_id)
        client.client_type = "confidential"
        client.client_secret = client_secret
        client.jwt_alg = "RS256"
        client.require_consent = False
        client.reuse_consent = True
        client.redirect_uris = redirect_uris
        client.post_logout_redirect_uris = spec.get("post_logout_redirect_uris", [])
        client.scope = CLIENT_SCOPES
        client.save()
        client.response_types.set([ResponseType.objects.get(value="code")])
        self.stdout.write(f"client {client_id} ({'created' if created else 'updated'})")
