"""``trajhook serve``: the live page, one step slider over every panel, while training writes the store.

:mod:`~trajhook.serve.follow` follows each store (one SWMR reader thread per file),
:mod:`~trajhook.serve.frames` packs what the page fetches, :mod:`~trajhook.serve.payloads` builds it,
:mod:`~trajhook.serve.app` answers the page (Starlette), :mod:`~trajhook.serve.server` runs it (uvicorn),
and :mod:`~trajhook.serve.notebook` shows it inline (``trajhook.show``). The page's one script,
``static/trajhook.js``, also draws ``trajhook report``'s static snapshot. Needs ``pip install 'trajhook[serve]'``.
"""

from trajhook.serve.notebook import show
from trajhook.serve.server import serve

__all__ = ["serve", "show"]
