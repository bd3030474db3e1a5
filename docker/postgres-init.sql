-- One server, two databases: the app's and Dagster's instance storage.
CREATE DATABASE mixai;
CREATE DATABASE dagster;
