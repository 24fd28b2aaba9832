"""The fixtures the store's tests share with the API's: services over a database of the test's engine."""

from tests.api.conftest import client as client
from tests.api.conftest import make_client as make_client
from tests.api.conftest import module_client as module_client
from tests.api.conftest import transport as transport
