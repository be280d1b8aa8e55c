//! TODO(owner): auth/verify
