//! A workspace as the edge holds it (being written).
