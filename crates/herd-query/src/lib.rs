//! herd-query
