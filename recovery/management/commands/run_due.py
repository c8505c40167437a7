from django.core.management.base import BaseCommand

from recovery.scheduler import run_due


class Command(BaseCommand):
    help = "Run one scheduler pass at the current time and exit (for cron and simulations)."

    def add_arguments(self, parser):
        parser.add_argument("--max-cases", type=int, default=None)

    def handle(self, *args, **opts):
        report = run_due(max_cases=opts["max_cases"])
        self.stdout.write(
            f"claimed {report.claimed} cases; {report.actions or 'nothing due'}; "
            f"events retried {report.events_retried}; expiry warnings {report.expiry_warnings}"
        )
