"""Kernel data plane plumbing: namespaces, links (pyroute2), firewall back ends."""
