"""Seed the demo store once, if the database has no store yet (used by `make run`)."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from demo import replay as demo
from demo.extra import require
from stores.models import Store


class Command(BaseCommand):
    help = (
        "If the database has no store: create the demo coffee shop, replay its last days "
        "of billing through the real services in simulated time, and create the operator "
        "and agent logins. Does nothing when a store exists. Prints the address and logins."
    )

    def add_arguments(self, parser):
        parser.add_argument("--customers", type=int, default=demo.DEFAULT_CUSTOMERS)
        parser.add_argument("--days", type=int, default=demo.DEFAULT_DAYS)
        parser.add_argument("--seed", type=int, default=demo.DEFAULT_SEED)
        parser.add_argument(
            "--failure-rate",
            type=float,
            default=demo.RENEWAL_FAILURE,
            help="chance that a renewal's first charge fails (risky customers: 3x)",
        )
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", default="8000")

    def handle(self, *args, **opts):
        if opts["customers"] < 1 or opts["days"] < 1:
            raise CommandError("--customers and --days must be at least 1.")
        store = demo.demo_store()
        token = None
        if store is not None and not demo.demo_is_complete(store):
            raise CommandError(
                "The demo store's seeding did not finish (interrupted?). "
                "Run `make reset` and then `make run` to start over."
            )
        if store is None and not Store.objects.exists():
            require("time_machine", "replays the demo store's history in simulated time")
            self.stdout.write(
                f"Seeding the demo store: {opts['customers']:,} customers, "
                f"{opts['days']} days of billing replayed through Recoup (seed {opts['seed']})…"
            )
            summary, token = demo.demo_seed(
                customers=opts["customers"],
                days=opts["days"],
                seed=opts["seed"],
                failure_rate=opts["failure_rate"],
                out=self.stdout,
            )
            store = summary.store
            self.stdout.write(summary.text)
            if opts["verbosity"] >= 2:
                self.stdout.write(summary.timing)
        elif store is None:
            store = Store.objects.order_by("created_at").first()
            self.stdout.write(f"Using the existing store {store.name} (no demo data added).")
        else:
            self.stdout.write(f"Keeping the demo store and its data ({store.name}).")
        base = f"http://{opts['host']}:{opts['port']}"
        self.stdout.write("")
        self.stdout.write(f"  Recoup is starting at {base}/")
        self.stdout.write(f"  Operator login: operator / {demo.DEMO_PASSWORD}")
        self.stdout.write(f"  Agent login:    agent / {demo.DEMO_PASSWORD}")
        if token:
            self.stdout.write(f"  API token:      {token}   (shown once)")
        self.stdout.write(f"  Stripe webhook: {base}{store.webhook_path}")
        if settings.DEBUG:
            self.stdout.write(f"  Django admin:   {base}/admin/")
        self.stdout.write("")
