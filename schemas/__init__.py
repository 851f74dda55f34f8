"""Data contracts of clamp-index: settings, tables, task messages, collection spec."""
