"""The Python SDK of optim-service: torch.optim's Rprop, RMSprop, SGD, Adam, AdamW and Adagrad, with the optimizer
on the service.

    from optim_client import Client, RemoteRMSprop

    client = Client("http://127.0.0.1:8000")  # api_key=..., or $OPTIM_API_KEY
    optimizer = RemoteRMSprop(model.named_parameters(), client=client, lr=0.01, momentum=0.9)
    loss.backward()
    optimizer.step()  # sends the grads, writes the new values into the params in place

Data-parallel training: each worker attaches to one session created with ``aggregation``, and its
``step()`` sends a contribution::

    optimizer = RemoteRprop.attach(client, session_id, model.named_parameters(), worker="rank3")

``Session`` is the lower level, with numpy arrays. torch is optional: when it is installed the
optimizers are ``torch.optim.Optimizer``s, which torch's LR schedulers drive; without it, numpy
arrays work the same.
"""

from optim_client.checkpoint import Checkpoint
from optim_client.client import DEFAULT_URL, Client
from optim_client.errors import (
    AuthenticationError,
    BadRequestError,
    ClientError,
    ConflictError,
    NotFoundError,
    OptimClientError,
    OptimServiceError,
    PreconditionFailedError,
    RateLimitedError,
    ResponseExpiredError,
    RoundAnswerExpiredError,
    RoundMovedOnError,
    RoundTimeoutError,
    ServerError,
    ServiceUnreachableError,
    StepConflictError,
    ValidationError,
)
from optim_client.optimizers import (
    RemoteAdagrad,
    RemoteAdam,
    RemoteAdamW,
    RemoteRMSprop,
    RemoteRprop,
    RemoteSGD,
)
from optim_client.remote_optimizer import RemoteOptimizer
from optim_client.retry import RetryPolicy
from optim_client.session import Session

__all__ = [
    "DEFAULT_URL",
    "AuthenticationError",
    "BadRequestError",
    "Checkpoint",
    "Client",
    "ClientError",
    "ConflictError",
    "NotFoundError",
    "OptimClientError",
    "OptimServiceError",
    "PreconditionFailedError",
    "RateLimitedError",
    "RemoteAdagrad",
    "RemoteAdam",
    "RemoteAdamW",
    "RemoteOptimizer",
    "RemoteRMSprop",
    "RemoteRprop",
    "RemoteSGD",
    "ResponseExpiredError",
    "RetryPolicy",
    "RoundAnswerExpiredError",
    "RoundMovedOnError",
    "RoundTimeoutError",
    "ServerError",
    "ServiceUnreachableError",
    "Session",
    "StepConflictError",
    "ValidationError",
]
