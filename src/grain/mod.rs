//! The grain model of BBC's `mediagrains`: one time-stamped unit of media.
