"""The demo store and the simulation: Recoup driven in simulated time, not part of the product.

`manage.py demo_setup` (what `make run` seeds) and `manage.py simulate` live here. They use
the product's own services as any client would; nothing in the product apps imports this
app. Their simulated clock (time-machine) and the simulation's chart (matplotlib) come
from the `demo` extra, which `make run` installs and a production deployment does not need.
"""
