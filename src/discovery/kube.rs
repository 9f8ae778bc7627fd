//! Kubernetes pod discovery (being written).
