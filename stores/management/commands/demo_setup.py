"""Create the demo store and logins if the database has none (used by `make run`)."""

from django.conf import settings
from django.core.management.base import BaseCommand

from stores.models import Store
from stores.services import api_token_create, membership_create, store_create

DEMO_PASSWORD = "recoup-demo"


class Command(BaseCommand):
    help = "Create a demo store with an operator and an agent login, once."

    def handle(self, *args, **opts):
        store = Store.objects.order_by("created_at").first()
        if store is None:
            store = store_create(
                name="Bean Box Coffee (demo)",
                currency="usd",
                timezone="Europe/Berlin",
                stripe_webhook_secret="whsec_demo_" + settings.SECRET_KEY[:16].replace(" ", ""),
                gateway=Store.Gateway.SANDBOX,
            )
            membership_create(
                store=store, username="operator", role="operator", password=DEMO_PASSWORD
            )
            membership_create(store=store, username="agent", role="agent", password=DEMO_PASSWORD)
            _, token = api_token_create(store=store, name="demo")
            self.stdout.write(f"Created demo store {store.name} ({store.id}); API token: {token}")
        self.stdout.write("")
        self.stdout.write("  Recoup is starting at http://127.0.0.1:8000/")
        self.stdout.write(f"  Operator login: operator / {DEMO_PASSWORD}")
        self.stdout.write(f"  Agent login:    agent / {DEMO_PASSWORD}")
        self.stdout.write(f"  Stripe webhook: http://127.0.0.1:8000{store.webhook_path}")
        self.stdout.write("")
