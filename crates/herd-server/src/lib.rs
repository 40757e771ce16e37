//! herd-server
