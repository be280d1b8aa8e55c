//! TODO(owner): proxy/headers
