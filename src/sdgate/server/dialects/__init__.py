"""One package per wire format; each is protocol (wire models), translate (pure), router (thin),
and exposes one ``DIALECT`` (``server/dialect.py``); ``registry.DIALECTS`` lists them."""
