"""The only tags and filters message templates may use.

Message templates are written by merchants in the dashboard, so they render in a
restricted engine (messaging/rendering.py): no {% load %}, {% include %}, {% url %} or
{% debug %}, no access to settings or the database, only the documented variables.
"""

from django.template import Library, defaultfilters, defaulttags

register = Library()

for _name in ("if", "firstof", "comment", "spaceless", "templatetag"):
    register.tag(_name, defaulttags.register.tags[_name])

for _name in (
    "default",
    "default_if_none",
    "upper",
    "lower",
    "title",
    "capfirst",
    "truncatechars",
    "truncatewords",
    "pluralize",
    "yesno",
    "length",
    "linebreaksbr",
    "linebreaks",
    "striptags",
    "cut",
):
    register.filter(_name, defaultfilters.register.filters[_name])
