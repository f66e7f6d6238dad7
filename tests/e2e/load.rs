//! meshwork load and meshwork bench, end to end (issue 4).
