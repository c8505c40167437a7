from django.db import migrations, models


def rebuild(apps, schema_editor):
    """Rows written before this column have no acted channel: drop the rollup, so the
    next refresh of each store rebuilds every day (a full refresh, as the first time)."""
    apps.get_model("analytics", "CaseDay").objects.all().delete()
    apps.get_model("analytics", "RollupState").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("analytics", "0002_rollupstate_seen"),
        ("messaging", "0002_message_visited_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="caseday",
            name="acted_channel",
            field=models.CharField(blank=True, default="", max_length=16),
        ),
        migrations.RunPython(rebuild, migrations.RunPython.noop),
    ]
