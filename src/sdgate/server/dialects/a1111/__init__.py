"""The AUTOMATIC1111 WebUI API (``/sdapi/v1``), as v1.10.1 speaks it."""
