"""One package per wire format; each is protocol (wire models), translate (pure), router (thin)."""
