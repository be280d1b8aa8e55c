//! TODO(owner): auth/claims
