"""Frame interpolation with RIFE: our own IFNet code, the weights fetcher, the backends."""
