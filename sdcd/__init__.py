"""sdcd: one Docker host per tenant over a datacenter of compute nodes."""

__version__ = "0.1.0"
