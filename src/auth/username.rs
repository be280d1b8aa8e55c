//! TODO(owner): auth/username
