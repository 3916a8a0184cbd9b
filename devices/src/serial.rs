//! Serial. TO BE WRITTEN.
