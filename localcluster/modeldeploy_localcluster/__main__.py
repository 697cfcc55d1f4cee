from modeldeploy_localcluster.cli import main

main()
