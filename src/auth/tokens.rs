//! TODO(owner): auth/tokens
