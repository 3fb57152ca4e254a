"""Service discovery: sources that learn a cluster's endpoints from a file, DNS or etcd, run by the supervisor."""
