//! TODO(owner): auth/keys
