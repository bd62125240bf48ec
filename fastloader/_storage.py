"""Whether anything besides its owner still views a tensor's memory."""
from __future__ import annotations

import torch


def storage_users(t: torch.Tensor) -> int | None:
    """Tensors (and storage objects) holding t's storage, t and this call's temporary
    included; None where torch's private counter is gone (callers then stay safe)."""
    try:
        return torch._C._storage_Use_Count(t.untyped_storage()._cdata)
    except AttributeError:
        return None
