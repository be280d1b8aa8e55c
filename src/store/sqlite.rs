//! TODO(owner): store/sqlite
