//! recproxy
