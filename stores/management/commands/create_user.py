import json
import uuid

from django.core.management.base import BaseCommand, CommandError

from common.errors import ApplicationError
from stores.models import Store
from stores.services import membership_create


class Command(BaseCommand):
    help = "Create a user (or reuse one) with a role in a store."

    def add_arguments(self, parser):
        parser.add_argument("--store", required=True, help="store id")
        parser.add_argument("--role", required=True, choices=["operator", "agent"])
        parser.add_argument("--username", required=True)
        parser.add_argument("--email", default="")
        parser.add_argument("--password", default=None, help="generated and printed when omitted")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **opts):
        try:
            store = Store.objects.get(pk=uuid.UUID(opts["store"]))
        except (ValueError, Store.DoesNotExist) as exc:
            raise CommandError(f"No store with id {opts['store']!r}.") from exc
        try:
            membership, generated = membership_create(
                store=store,
                username=opts["username"],
                role=opts["role"],
                email=opts["email"],
                password=opts["password"],
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        if opts["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "user_id": membership.user_id,
                        "username": membership.user.username,
                        "store_id": str(store.id),
                        "role": membership.role,
                        "password": generated,
                    }
                )
            )
            return
        self.stdout.write(f"User {membership.user.username} is {membership.role} of {store.name}.")
        if generated:
            self.stdout.write(f"Password: {generated}")
