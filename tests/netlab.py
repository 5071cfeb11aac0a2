"""The namespace lab lives in the product (the demo and bench use it too); tests import it here."""

from publisher.lab import *  # noqa: F401,F403
from publisher.lab import Lab, Netns, home_router_lab, run, wait_for  # noqa: F401
