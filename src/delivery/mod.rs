//! Delivery to Kiva.
