//! TODO(owner): auth/password
