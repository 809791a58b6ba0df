"""The browser front end: the playground page (``/playground``), a tiny index (``/``) and the API
docs (``/docs``, ``/redoc``) served from assets shipped with the packages, never from a CDN."""
