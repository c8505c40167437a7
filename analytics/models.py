"""The analytics rollup: a store's cases summed per local day, refreshed incrementally.

Each `CaseDay` row sums the cases of one store and one day (in the store's time zone) that
share one combination of dimensions. The `basis` says which day and which dimensions:

- ``cohort``   day opened × track × decline code × status × currency
- ``product``  day opened × product × status × currency
- ``day``      day opened × status × currency (the daily trend)
- ``closed``   day closed × status × currency × recovery source × channel (last touch:
  the last message sent before recovery) × acted channel (the last message whose pay
  link the customer visited before recovery)
- ``duration`` day closed × exact seconds from failure to recovery (recovered cases only:
  the histogram the median days to recovery is read from)

Dimensions a basis does not use are "" (and `duration` NULL); `attempts` is summed for the
bases by closing day only (attempts per recovery). Rows are written only by
`analytics.services.rollup_refresh`, which replaces whole days.
"""

from django.db import models

from stores.models import Store


class CaseDay(models.Model):
    class Basis(models.TextChoices):
        COHORT = "cohort"
        PRODUCT = "product"
        DAY = "day"
        CLOSED = "closed"
        DURATION = "duration"

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    basis = models.CharField(max_length=8, choices=Basis.choices)
    track = models.CharField(max_length=16, blank=True, default="")
    decline_code = models.CharField(max_length=64, blank=True, default="")
    product = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=12, blank=True, default="")
    currency = models.CharField(max_length=3, blank=True, default="")
    recovered_via = models.CharField(max_length=16, blank=True, default="")
    channel = models.CharField(max_length=16, blank=True, default="")
    acted_channel = models.CharField(max_length=16, blank=True, default="")
    duration = models.FloatField(null=True, blank=True, help_text="Seconds, basis duration.")
    cases = models.BigIntegerField(default=0)
    amount = models.BigIntegerField(default=0)
    recovered_amount = models.BigIntegerField(default=0)
    attempts = models.BigIntegerField(default=0)

    class Meta:
        indexes = [
            # The home page's read of two periods of days, and the refresh's delete of
            # the days it recomputes.
            models.Index(fields=["store", "day"], name="caseday_store_day_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.store_id} {self.day} {self.basis}"


class RollupState(models.Model):
    """How far a store's rollup is up to date: the refresh watermark, the time zone its
    days were cut in, the open cases per opened day it last saw (a case closed with a
    back-dated time is found by its day's open count, not by its `updated_at`), and the
    saves it already counted."""

    store = models.OneToOneField(
        Store, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    timezone = models.CharField(max_length=64, blank=True, default="")
    watermark = models.DateTimeField(null=True, blank=True)
    open_days = models.JSONField(default=dict, blank=True)
    # The saves the last refresh counted within the next check's look-back window, by case
    # id: [updated_at, opened day, closed day or None] (so the check can skip them).
    seen = models.JSONField(default=dict, blank=True)
    # The highest case id counted: an open case with a higher id is new, not reopened.
    last_case_id = models.BigIntegerField(default=0)
    refreshed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.store_id} rollup to {self.watermark}"
