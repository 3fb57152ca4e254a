# Package marker so the C declarations here can be cimported.
