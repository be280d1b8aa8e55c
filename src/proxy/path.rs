//! TODO(owner): proxy/path
