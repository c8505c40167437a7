import uuid

from django.core.management.base import BaseCommand, CommandError

from recovery.scheduler import run_due
from stores.models import Store


class Command(BaseCommand):
    help = "Run one scheduler pass at the current time and exit (for cron and simulations)."

    def add_arguments(self, parser):
        parser.add_argument("--max-cases", type=int, default=None)
        parser.add_argument(
            "--max-seconds",
            type=float,
            default=None,
            help="claim no new batch after this long (the next run goes on from there)",
        )
        parser.add_argument(
            "--store", default=None, help="only this store's cases (its id, as in the admin)"
        )

    def handle(self, *args, **opts):
        store_id = None
        if opts["store"]:
            store = (
                Store.objects.filter(pk=opts["store"]).first() if _is_uuid(opts["store"]) else None
            )
            if store is None:
                raise CommandError(f"No store {opts['store']!r}.")
            store_id = store.pk
        report = run_due(
            max_cases=opts["max_cases"], store_id=store_id, max_seconds=opts["max_seconds"]
        )
        self.stdout.write(
            f"claimed {report.claimed} cases; {report.actions or 'nothing due'}; "
            f"events retried {report.events_retried}; expiry warnings {report.expiry_warnings}"
            + ("; out of time, the rest is left to the next run" if report.stopped_early else "")
        )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
