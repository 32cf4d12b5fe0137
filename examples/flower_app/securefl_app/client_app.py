"""ClientApp: Opacus DP-SGD training wrapped by securefl's secure aggregation mod.

Compared with a Flower app that uses SecAgg+, the only change on this side is
the mod: ``mods=[securefl_mod]`` instead of ``mods=[secaggplus_mod]``.
"""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from securefl.flower.mod import securefl_mod

app = ClientApp(mods=[securefl_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of DP-SGD on this node's partition, its accountant kept on
    the node's disk; returns the local model and the encoded update, which
    securefl_mod masks.

    torch and Opacus are imported here, not at module level: every message
    starts a fresh ClientApp process, and only the masked-input stage trains.
    """
    from securefl.flower.client_train import train_private_client

    return train_private_client(msg, context)
