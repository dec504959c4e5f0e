"""The official Composition-1k metrics (SAD, MSE, Grad, Conn), faithful to the MATLAB evaluation code."""
from matting.metrics.official import (
    CONN_THRESHOLD_CODES,
    NoUnknownPixelsWarning,
    compute_metrics,
    conn,
    grad,
    mse,
    sad,
)
