"""One backend per library behind one interface (``base.Backend``)."""
