"""The write-ahead log: record format, group-commit writer, replaying reader."""
