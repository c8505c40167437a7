import json

from django.core.management.base import BaseCommand, CommandError

from common.errors import ApplicationError
from stores.services import api_token_create, store_create


class Command(BaseCommand):
    help = "Create a store (tenant) and an API token for it; prints the id, webhook path and token."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--stripe-secret-key", default="")
        parser.add_argument("--stripe-webhook-secret", default="")
        parser.add_argument("--currency", default="usd")
        parser.add_argument("--timezone", default="UTC")
        parser.add_argument("--gateway", choices=["sandbox", "stripe"], default=None)
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **opts):
        try:
            store = store_create(
                name=opts["name"],
                currency=opts["currency"],
                timezone=opts["timezone"],
                stripe_secret_key=opts["stripe_secret_key"],
                stripe_webhook_secret=opts["stripe_webhook_secret"],
                gateway=opts["gateway"],
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        _, raw = api_token_create(store=store)
        if opts["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "store_id": str(store.id),
                        "webhook_path": store.webhook_path,
                        "api_token": raw,
                    }
                )
            )
            return
        self.stdout.write(f"Store:        {store.name} ({store.id})")
        self.stdout.write(f"Webhook path: {store.webhook_path}")
        self.stdout.write(f"API token:    {raw}   (shown once; keep it safe)")
