//! Email over SMTP (or .eml files when no server is set).
